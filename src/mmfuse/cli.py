"""The ``mmfuse`` command line. Heavy modules are imported inside each command."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mmfuse: multimodal fusion for tables of text, images, audio, time series, numbers and categories.")
cache_app = typer.Typer(no_args_is_help=True, help="See or clear the on-disk caches.")
app.add_typer(cache_app, name="cache")

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug


def _parse_groups(items: List[str]) -> dict:
    from .errors import SchemaError

    out = {}
    for item in items:
        if "=" not in item:
            raise SchemaError(f"--group expects NAME=COL1,COL2, got {item!r}")
        name, cols = item.split("=", 1)
        out[name.strip()] = [c.strip() for c in cols.split(",") if c.strip()]
    return out


@app.command()
def inspect(
    data: Path = typer.Argument(..., help="Table: .csv, .tsv, .parquet or .jsonl."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target column."),
    column: List[str] = typer.Option([], "--column", "-c", help="Override a role: NAME=ROLE (repeatable)."),
    group: List[str] = typer.Option([], "--group", "-g", help="Read columns as one input: NAME=COL1,COL2."),
    schema: Optional[Path] = typer.Option(None, "--schema", help="YAML/JSON schema file with roles and groups."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for relative paths (default: the table's)."),
    save_schema: Optional[Path] = typer.Option(None, "--save-schema", help="Write the schema to this YAML/JSON file."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of CSV/TSV/JSONL files."),
):
    """Print the inferred schema: column, role, input, why, missing count, example value."""
    from rich.console import Console
    from rich.table import Table as RichTable

    from .io import read_table
    from .schema import describe_schema, infer_schema, parse_column_overrides

    table = read_table(data, root=root, encoding=encoding)
    sch = infer_schema(table, target=target, overrides=parse_column_overrides(column), groups=_parse_groups(group),
                       schema_file=schema)
    desc = describe_schema(sch, table)
    out = RichTable(title=f"{data} — {len(table)} rows, {len(desc)} columns, {len(sch.inputs())} inputs")
    for c in desc.columns:
        out.add_column(c, overflow="fold")
    for _, r in desc.iterrows():
        out.add_row(*[str(v) for v in r])
    Console(width=None if sys.stdout.isatty() else 200).print(out)
    if save_schema:
        sch.save(save_schema)
        typer.echo(f"schema written to {save_schema}")


@cache_app.command("ls")
def cache_ls(directory: Optional[Path] = typer.Option(None, "--dir", help="Cache folder (default ~/.cache/mmfuse).")):
    """List cache entries with their sizes."""
    from ._cache import default_cache_dir, list_cache

    entries = list_cache(directory)
    for e in entries:
        typer.echo(f"{e['entry']}\t{e['rows']} rows\t{e['bytes'] / 1e6:.1f} MB")
    typer.echo(f"{len(entries)} entries in {directory or default_cache_dir()}")


@cache_app.command("clear")
def cache_clear(directory: Optional[Path] = typer.Option(None, "--dir", help="Cache folder (default ~/.cache/mmfuse).")):
    """Delete every cache entry."""
    from ._cache import clear_cache

    typer.echo(f"removed {clear_cache(directory)} entries")


def main(argv=None) -> None:
    """Entry point: mmfuse errors become one line on stderr and exit code 2 (``--debug`` for tracebacks)."""
    from .errors import MmfuseError

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        app(args=args, standalone_mode=False)
    except MmfuseError as e:
        if "--debug" in args:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except FileNotFoundError as e:
        if "--debug" in args:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
