"""lm-evaluation-harness with the plugin's `titans` model registered (the `eval` extra):

    python -m titans_plugin.evaluate --model titans \\
        --model_args config=train_configs/debug_mac.toml,checkpoint=outputs/debug_mac/checkpoint/step-400 \\
        --tasks <task> [--include_path <folder>] [lm-eval's other arguments]

Every argument is lm-eval's own (`lm-eval --help`); the model's arguments are in
titans_plugin/inference/lm_eval_backend.py. lm-eval finds models only among those it
ships or those registered in the running process, hence this front end."""

import sys


def main(argv: list[str] | None = None) -> None:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("python -m titans_plugin.evaluate needs lm-evaluation-harness: pip install 'titans_plugin[eval]'")
    import titans_plugin.inference.lm_eval_backend  # noqa: F401  (registers the `titans` model)

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
