"""Using a trained model: load it from its training config and checkpoint (trained.py),
score text (scoring.py), sample text (sampling.py), and lm-evaluation-harness's `titans`
backend (lm_eval_backend.py, needs the `eval` extra). Every path reads through the model's
incremental decoding (`forward_cached`), so a prompt or document of any length is read in
pieces with the memory state and attention caches carried between them."""
