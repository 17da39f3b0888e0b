"""The `dashclip` command line. Each stage of the method registers its own commands from its
package (`<stage>/cli.py`), so the whole CLI reads in the order of the method."""
from __future__ import annotations

import typer

app = typer.Typer(
    help="dashclip: multimodal e-commerce search (DashCLIP). Stages, in order: "
    "catalog import -> pretrain (Stage 1) -> labels -> align (Stage 2) -> align-photos -> index -> search/serve -> eval "
    "(`dashclip export onnx` for fast CPU serving). "
    "`dashclip train shop.toml` runs them all on your shop, `dashclip demo` on the fashion catalog.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    from .data import cli as data_cli
    from .models import cli as models_cli
    from .training import cli as training_cli
    from .labeling import cli as labeling_cli
    from .index import cli as index_cli
    from .serving import cli as serving_cli
    from .evaluation import cli as evaluation_cli
    from .pipeline import cli as pipeline_cli
    from . import demo

    for module in (data_cli, training_cli, labeling_cli, index_cli, models_cli, serving_cli, evaluation_cli,
                   pipeline_cli, demo):
        module.register(app)


_register()

if __name__ == "__main__":
    app()
