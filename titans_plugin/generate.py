"""Text from a trained checkpoint, streamed to stdout as it is generated:

    python -m titans_plugin.generate --config train_configs/debug_mac.toml \\
        --checkpoint outputs/debug_mac/checkpoint/step-400 --prompt "This is a story about"

The prompt comes from --prompt, --prompt-file FILE, or standard input (--prompt-file -),
and may be of any length: it is read in pieces of the training length through the
incremental path (memory state and attention caches), then one token at a time.
Greedy by default; --temperature > 0 samples (with --top-k, --top-p, --seed). Generation
ends at the end-of-text token, at the first --stop string (not printed), or after
--max-new-tokens. The config is a torchtitan 0.2.2 TOML or a 0.3.0 MODULE:FUNCTION,
whichever torchtitan is installed."""

import argparse
import sys

from titans_plugin.inference.sampling import Sampling, generate
from titans_plugin.inference.trained import DTYPES, load_trained


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m titans_plugin.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the training config: a 0.2.2 TOML or a 0.3.0 MODULE:FUNCTION")
    p.add_argument("--checkpoint", required=True, help="a DCP step folder, e.g. outputs/<job>/checkpoint/step-400")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text")
    prompt.add_argument("--prompt-file", help="a file holding the prompt ('-': standard input)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample within this probability mass (1: all)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="end at this text (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--echo", action="store_true", help="print the prompt before the generated text")
    return p


def _prompt_text(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file == "-":
        return sys.stdin.read()
    with open(args.prompt_file) as f:
        return f.read()


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens < 0:
        parser.error(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    try:
        sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        parser.error(f"--{str(e).replace('_', '-')}")
    text = _prompt_text(args)
    trained = load_trained(args.config, args.checkpoint, device=args.device, dtype=args.dtype)
    if args.echo:
        sys.stdout.write(text)
    prompt = [trained.prefix_id, *trained.encode(text)]
    for piece in generate(trained, prompt, max_new_tokens=args.max_new_tokens, sampling=sampling, stop=args.stop):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
