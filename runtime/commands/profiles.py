"""``convdeploy profiles``: the deployment target profiles, or one of them."""

from __future__ import annotations

import click

from .common import ConvDeployCommand, echo_json, echo_table, json_option, plain


@click.command("profiles", cls=ConvDeployCommand)
@click.argument("name", required=False)
@json_option
def profiles_cmd(name: str | None, as_json: bool) -> None:
    """List deployment target profiles, or show one (a name or a TOML file path).

    \b
    Example:
      convdeploy profiles
      convdeploy profiles jetson-agx-orin --json
    """
    from ..targets import ALIASES, list_profiles, load_profile

    if name:
        profile = load_profile(name)
        if as_json:
            echo_json(profile.to_dict())
        else:
            for key, value in profile.to_dict().items():
                click.echo(f"{key:>22}: {plain(value)}")
        return
    rows = [load_profile(n).to_dict() for n in list_profiles()]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["precisions"] = ",".join(r["allowed_precisions"])
        for key in ("jetpack", "tensorrt", "cuda", "python"):
            r[key] = "/".join(r[key]) or "-"
        r["cc"] = r["compute_capability"] or "-"
    echo_table(rows, [("name", "name"), ("device", "device"), ("jetpack", "JetPack"), ("tensorrt", "TensorRT"),
                      ("cuda", "CUDA"), ("cc", "CC"), ("python", "Python"), ("dla_cores", "DLA"),
                      ("precisions", "precisions"), ("opset", "opset")])
    click.echo("aliases (previous release, kept for one release): "
               + ", ".join(f"{old} -> {new}" for old, new in sorted(ALIASES.items())))
