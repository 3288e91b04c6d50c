"""Convert a torchtitan llama3 TOML config into a Titans hybrid config.

    python -m titans_plugin.convert llama3_8b.toml --pattern GGA -o titans_8b.toml \
        --set memory_depth=2 --set window=2048

Everything in the input is kept (training, parallelism, checkpointing, ...). The output
adds the three plugin lines ([experimental] custom_import, [job] custom_config_module,
[model] name/flavor) and a [titans] section. The model sizes stay the llama3 flavor's:
flavor "8B" becomes our flavor "llama3_8B" with the same dim, layers, heads and FFN.
"""

import argparse
import dataclasses
import sys
import tomllib

import tomli_w

from titans_plugin.config import TitansConfig
from titans_plugin.hybrid import llama3_flavor_args

CUSTOM_CONFIG_MODULE = "titans_plugin.adapter.job_config"
MODEL_NAME = "titans"


def _parse_value(field: dataclasses.Field, text: str):
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if "list" in str(kind):
        return [x for x in text.split(",") if x]
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def titans_section(pattern: str, sets: list[str], n_heads: int) -> dict:
    fields = {f.name: f for f in dataclasses.fields(TitansConfig)}
    # Memory heads default to the attention heads: head dims stay small (64-128) at any
    # width instead of growing with it.
    section = {"pattern": pattern, "memory_heads": n_heads}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {sorted(fields)}, got {item!r}")
        section[key] = _parse_value(fields[key], value)
    return section


def convert(config: dict, pattern: str, sets: list[str] = ()) -> dict:
    model = config.get("model", {})
    if model.get("name", "llama3") != "llama3":
        raise ValueError(f"model.name must be 'llama3' in the input config, got {model.get('name')!r}")
    flavor = model.get("flavor", "debugmodel")
    base = llama3_flavor_args(flavor)
    section = titans_section(pattern, list(sets), base.n_heads)
    titans = TitansConfig(**section)
    seq_len = config.get("training", {}).get("seq_len")
    titans.validate(base.dim, base.n_layers, seq_len)  # fail here, not on the cluster

    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    out.setdefault("experimental", {})["custom_import"] = "titans_plugin"
    out.setdefault("job", {})["custom_config_module"] = CUSTOM_CONFIG_MODULE
    out["model"] = {**model, "name": MODEL_NAME, "flavor": f"llama3_{flavor}"}
    out["titans"] = section
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m titans_plugin.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a torchtitan llama3 TOML config")
    p.add_argument("--pattern", required=True,
                   help="layer pattern tiled over the depth (letters A W C G L M) or a variant (mac, mag, mal, lmm)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other [titans] field, e.g. --set window=2048 (repeatable)")
    p.add_argument("-o", "--output", required=True, help="where to write the hybrid TOML")
    a = p.parse_args(argv)
    with open(a.input, "rb") as f:
        config = tomllib.load(f)
    try:
        out = convert(config, a.pattern, a.set)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    header = f"# Converted from {a.input} by titans_plugin.convert (--pattern {a.pattern}).\n"
    with open(a.output, "w") as f:
        f.write(header + tomli_w.dumps(out))
    print(f"wrote {a.output}: model.flavor={out['model']['flavor']}, titans.pattern={a.pattern}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
