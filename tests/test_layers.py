"""The layer contracts of DESIGN.md, checked on the real import graph with import-linter (`.importlinter`)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_graph_keeps_every_layer_contract(monkeypatch, capsys):
    import logging

    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    # import-linter's CLI configures logging with dictConfig, which disables every logger that exists (genaug's
    # too) for the rest of this process: their state is put back
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    was = [lg.disabled for lg in loggers]
    try:
        code = lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True)
    finally:
        for lg, disabled in zip(loggers, was):
            lg.disabled = disabled
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 broken" in out and "5 kept" in out  # every contract in the file was checked
