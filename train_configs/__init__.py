"""The shipped training configs, installed as `titans_plugin.train_configs`.

Each is a torchtitan 0.2.2 TOML (`--job.config_file train_configs/debug_mac.toml`); the
torchtitan 0.3 adapter reads the same files for its config functions
(`--module titans_plugin --config titans_debug_mac`), so both stacks train the same job."""
