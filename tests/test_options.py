"""Each stage accepts only the options it reads (issue #26): --help, foreign options, checkpoint-fixed options.

The reads are found in the source: every ``opt.<name>`` a stage script reads, and what the library
functions it hands ``opt`` (or ``vars(opt)``) read from their parameter, one call deep.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re

import pytest

import options
from conftest import ROOT

SCRIPTS = {
    "mkdirs": "mkdirs.py", "preprocess_images": "preprocess_images.py", "gen_maps": "gen_maps.py",
    "train_if": "train_if.py", "eval_if": "eval_if.py", "train_reg": "train_reg.py", "eval_reg": "eval_reg.py",
    "gen_tex": "gen_tex.py", "evaluate": "evaluate.py", "make_report": "make_report.py",
    "dpmap_train": "dpmap_pred/train.py", "dpmap_main": "dpmap_pred/main.py", "dpmap2mesh": "dpmap_pred/dpmap2mesh.py",
    "gen_synthetic": "gen_synthetic.py", "import_capture": "import_capture.py",
}


def _is_opt(node: ast.AST) -> bool:
    """``opt`` or ``self.opt``."""
    return (isinstance(node, ast.Name) and node.id == "opt") or (
        isinstance(node, ast.Attribute) and node.attr == "opt" and isinstance(node.value, ast.Name) and node.value.id == "self")


ALL_OPTIONS = {d for s in options.STAGES for d in options.stage_options(s)}


def _reads_of(tree: ast.AST, is_param) -> set[str]:
    """Names read from an options object: ``p.name``, ``getattr(p, "name")``, ``p["name"]``, ``p.get("name")``;
    where a name is computed (``getattr(p, key)``), every option name written as a string in ``tree``."""
    out, computed = set(), False
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load) and is_param(n.value) and n.attr not in ("get", "opt"):
            out.add(n.attr)
        elif isinstance(n, ast.Subscript) and is_param(n.value) and isinstance(n.slice, ast.Constant):
            out.add(n.slice.value)
        elif isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name) and f.id == "getattr" and len(n.args) >= 2 and is_param(n.args[0]):
                if isinstance(n.args[1], ast.Constant):
                    out.add(n.args[1].value)
                else:
                    computed = True
            if isinstance(f, ast.Attribute) and f.attr == "get" and is_param(f.value) and n.args:
                if isinstance(n.args[0], ast.Constant):
                    out.add(n.args[0].value)
                else:
                    computed = True
    if computed:
        out |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in ALL_OPTIONS}
    return out


def _function(module: str, qualname: str) -> ast.FunctionDef | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    node: ast.AST = ast.parse(open(spec.origin).read())
    first = qualname.split(".")[0]
    for n in ast.iter_child_nodes(node):  # a name the module re-exports (a package's __init__)
        if isinstance(n, ast.ImportFrom) and any((a.asname or a.name) == first for a in n.names):
            base = spec.name if spec.origin.endswith("__init__.py") else spec.name.rpartition(".")[0]
            source = n.module if n.level == 0 else ".".join([*base.split(".")[: len(base.split(".")) - n.level + 1], n.module or ""]).strip(".")
            name = next(a.name for a in n.names if (a.asname or a.name) == first)
            return _function(source, ".".join([name, *qualname.split(".")[1:]]))
    for part in qualname.split("."):
        node = next((n for n in ast.iter_child_nodes(node)
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            return None
    return node if isinstance(node, ast.FunctionDef) else None


def script_reads(path) -> tuple[set[str], set[str]]:
    """The options a script reads (module docstring), and the attributes it sets on ``opt`` itself."""
    tree = ast.parse(open(path).read())
    imported = {a.asname or a.name: (n.module, a.name) for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module and n.level == 0 for a in n.names}
    reads = _reads_of(tree, _is_opt)
    stored = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and _is_opt(n.value)}
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        for i, arg in enumerate(call.args):
            whole = isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "vars" and _is_opt(arg.args[0])
            if not (_is_opt(arg) or whole):
                continue
            f, chain = call.func, []
            while isinstance(f, ast.Attribute):
                chain.insert(0, f.attr)
                f = f.value
            if not isinstance(f, ast.Name) or f.id not in imported:
                continue  # a function of the script itself: its reads are in the tree already
            module, name = imported[f.id]
            fn = _function(module, ".".join([name, *chain]))
            if fn is None:
                continue
            params = [a.arg for a in fn.args.args]
            k = i + (1 if params and params[0] == "cls" else 0)
            if k < len(params):
                reads |= _reads_of(fn, lambda n, p=params[k]: isinstance(n, ast.Name) and n.id == p)
    return reads - {"stage"}, stored


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_each_stage_accepts_exactly_what_it_reads(stage):
    accepted = set(options.stage_options(stage)) - {"config"}  # --config is read by parse_options itself
    reads, stored = script_reads(ROOT / SCRIPTS[stage])
    assert not reads - stored - accepted, f"{stage} reads options its parser lacks: {sorted(reads - accepted)}"
    assert not accepted - reads, f"{stage} accepts options it never reads: {sorted(accepted - reads)}"


def test_every_stage_has_a_script():
    assert set(SCRIPTS) == set(options.STAGES)


def test_the_reader_finds_reads_through_a_helper():
    # the analysis itself: eval_if hands opt to SearchPlan.from_options, which reads the c2f options
    reads, _ = script_reads(ROOT / "eval_if.py")
    assert {"c2f_lattice", "c2f_rounds", "search"} <= reads and "uv_size" not in reads
    assert {"seed", "log_level"} <= script_reads(ROOT / "evaluate.py")[0]  # through start_stage
    assert {"feature_channels", "mlp_dim"} <= script_reads(ROOT / "train_if.py")[0]  # through models' re-export


def test_help_lists_only_the_stage_options(capsys):
    with pytest.raises(SystemExit):
        options.parse_options("eval_if", ["--help"])
    listed = set(re.findall(r"^\s+(--[\w-]+)", capsys.readouterr().out, re.M))
    assert {"--c2f_lattice", "--if_checkpoint", "--dataroot"} <= listed
    for foreign in ("--uv_size", "--search_range_mm", "--image_long_side", "--mlp_dim", "--tex_power", "--dp_size"):
        assert foreign not in listed, foreign


@pytest.mark.parametrize("stage, argv, reader", [
    ("eval_if", ["--uv_size", "512"], "gen_maps"),
    ("eval_reg", ["--points_num=7"], "train_if"),
    ("gen_maps", ["--image_long_side", "640"], "preprocess_images"),
    ("train_reg", ["--no-if_view_subsets"], "train_if"),
    ("dpmap2mesh", ["--tex_power", "3"], "gen_tex"),
])
def test_a_foreign_option_names_the_stage_that_reads_it(stage, argv, reader, capsys):
    with pytest.raises(SystemExit):
        options.parse_options(stage, argv)
    err = capsys.readouterr().err
    assert f"{stage} does not read --{argv[0].lstrip('-').split('=')[0].removeprefix('no-')}" in err and reader in err


def test_a_foreign_option_in_a_config_file_names_the_stage(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"d_size": 51, "uv_size": 128}))
    with pytest.raises(SystemExit):
        options.parse_options("eval_reg", ["--config", str(cfg)])
    err = capsys.readouterr().err
    assert "eval_reg does not read --uv_size" in err and "gen_maps" in err and str(cfg) in err


@pytest.mark.parametrize("stage, option, checkpoint", [
    ("eval_if", "--mlp_dim", "--if_checkpoint"),
    ("eval_if", "--feature_channels", "--if_checkpoint"),
    ("eval_reg", "--reg_channels", "--reg_checkpoint"),
    ("dpmap_main", "--dp_size", "--dp_checkpoint"),
    ("dpmap_main", "--dp_ngf", "--dp_checkpoint"),
])
def test_options_a_checkpoint_fixes_are_refused(stage, option, checkpoint, capsys):
    with pytest.raises(SystemExit):
        options.parse_options(stage, [option, "8"])
    err = capsys.readouterr().err
    assert checkpoint in err and "checkpoint" in err


def test_an_unknown_option_is_still_argparse_error(capsys):
    with pytest.raises(SystemExit):
        options.parse_options("eval_if", ["--uv_sise", "3"])
    assert "unrecognized arguments: --uv_sise" in capsys.readouterr().err


def test_abbreviations_are_not_taken_for_another_option(capsys):
    with pytest.raises(SystemExit):
        options.parse_options("gen_maps", ["--uv", "3"])
    assert "unrecognized" in capsys.readouterr().err


def test_pipeline_gives_each_stage_only_what_it_reads(tmp_path):
    import run_pipeline

    opt = run_pipeline.parse_args(["--dataroot", str(tmp_path / "d"), "--overwrite", "--ids", "001_01", "--device", "cpu"])
    opt.image_long_side = 640
    for name, script, extra in run_pipeline.EVAL_STAGES + run_pipeline.TRAIN_STAGES:
        stage = run_pipeline.OPTION_STAGE.get(name, name)
        argv = run_pipeline.stage_argv(name, script, extra, opt)
        options.parse_options(stage, argv)  # no foreign option: does not exit
        assert ("--device" in argv) == options.accepts(stage, "device")
    assert "--image_long_side" in run_pipeline.stage_argv("preprocess_images", "preprocess_images.py", [], opt)


def test_read_by_cuts_shared_arguments_to_the_stage():
    argv = ["--dataroot", "D", "--facescape_dataroot", "R", "--device", "cpu", "--ids", "001_01", "002_01",
            "--overwrite", "--uv_size=64", "--no-close_openings", "--d_size", "61"]
    assert options.read_by("gen_tex", argv) == ["--dataroot", "D", "--ids", "001_01", "002_01", "--overwrite"]
    assert options.read_by("eval_reg", argv) == ["--dataroot", "D", "--device", "cpu", "--ids", "001_01", "002_01",
                                                 "--overwrite", "--no-close_openings", "--d_size", "61"]
    assert options.read_by("gen_maps", argv)[-2:] == ["--overwrite", "--uv_size=64"]
