"""Mutation testing of the pure core with mutmut, one module at a time (``make mutation``).

For each module of ``mutation.toml`` (or those named on the command line):

1. copy the tree into ``build/mutation/<name>/`` and give that copy a ``[mutmut]`` section that
   mutates only this module and selects only its unit tests;
2. ``mutmut run`` there (it forks per mutant and runs the tests that call the mutated function);
3. re-check every mutant that was not killed in a fresh interpreter (``MUTANT_UNDER_TEST`` set,
   a new ``python -m pytest``): a fork inherits module-level caches filled by the clean run
   (``compile_format``'s lru_cache, ``FlowFormat`` templates), which make false survivors;
4. drop the equivalent mutants the config lists (only when the mutated line still matches),
   print the survivors with their diff and the score: killed / (mutants - equivalent).

Exit status: 0 when every module reaches ``fail_under`` (``--fail-under`` overrides), 1 when one
does not, 2 when mutmut itself failed. Figures are also written to
``build/mutation/summary.json``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("mutation.toml")
BUILD = ROOT / "build" / "mutation"
COPIED = ("forwarder", "transforms", "config", "tests", "setup.cfg", "pyproject.toml")
PYTEST_ARGS = ("-pno:randomly", "-pno:cacheprovider")

# mutmut's exit codes per mutant (mutmut/stats.py): 1 and 3 are kills; timeouts count as
# detected (the mutant made the tests hang); 0 survived; 5 and 33 had no test calling it.
KILLED = frozenset({1, 3})
TIMEOUT = frozenset({24, -24, 36, 152, 255})


@dataclass
class Result:
    """The figures of one module."""

    name: str
    path: str
    total: int = 0
    killed: int = 0
    killed_on_recheck: int = 0
    equivalent: list[str] = field(default_factory=list)
    stale_equivalent: list[str] = field(default_factory=list)
    survivors: dict[str, str] = field(default_factory=dict)  # mutant -> diff

    @property
    def counted(self) -> int:
        return self.total - len(self.equivalent)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.counted if self.counted else 100.0


def prepare(name: str, path: str, tests: list[str]) -> Path:
    """A fresh copy of the tree whose setup.cfg tells mutmut what to mutate and test."""
    work = BUILD / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for item in COPIED:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, work / item, ignore=ignore)
        else:
            shutil.copy2(source, work / item)
    lines = [
        "",
        "[mutmut]",
        "source_paths =",
        "    forwarder",
        "    transforms",
        "    config",
        f"only_mutate = {path}",
        "pytest_add_cli_args =",
        *(f"    {arg}" for arg in PYTEST_ARGS),
        "pytest_add_cli_args_test_selection =",
        *(f"    {test}" for test in tests),
        "",
    ]
    with (work / "setup.cfg").open("a", encoding="utf-8") as config:
        config.write("\n".join(lines))
    return work


def functions_of(source: str) -> dict[str, str]:
    """Source text of every function and method definition, by name."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = ast.get_source_segment(source, node) or ""
    return found


def mutant_diff(functions: dict[str, str], key: str) -> str:
    """The changed lines of one mutant (``-`` original, ``+`` mutated)."""
    local = key.rpartition(".")[2]
    orig_name = local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    original = functions.get(orig_name, "")
    mutated = functions.get(local, "").replace(local, orig_name, 1)
    lines = difflib.unified_diff(original.splitlines(), mutated.splitlines(), n=0, lineterm="")
    return "\n".join(
        line.strip() if line[:1] not in "-+" else line[0] + " " + line[1:].strip()
        for line in lines
        if line[:1] in "-+" and not line.startswith(("---", "+++"))
    )


def fresh_pytest(work: Path, mutant: str, tests: list[str]) -> int:
    """Exit status of the module's tests in a new interpreter with ``mutant`` active."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MUTANT_UNDER_TEST")}
    env["MUTANT_UNDER_TEST"] = mutant
    env["PY_IGNORE_IMPORTMISMATCH"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", *PYTEST_ARGS, *tests],
        cwd=work / "mutants",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=900,
        check=False,
    )
    return completed.returncode


def recheck(work: Path, key: str, tests: list[str], covering: list[str]) -> bool:
    """True when the mutant is killed in a fresh interpreter.

    First by the tests mutmut saw calling the mutated function (fast), then, for a mutant that
    survives them, by all of the module's tests: a function called inside a cached call (an
    lru_cache) is seen only from the first test, while later tests still use its result.
    """
    if covering and fresh_pytest(work, key, covering) in KILLED:
        return True
    return fresh_pytest(work, key, tests) in KILLED


def covering_tests(work: Path) -> dict[str, list[str]]:
    """mutmut's map of mangled function name -> the tests that called it."""
    stats = json.loads((work / "mutants" / "mutmut-stats.json").read_text(encoding="utf-8"))
    return {name: sorted(tests) for name, tests in stats["tests_by_mangled_function_name"].items()}


def run_module(name: str, module: dict[str, Any], jobs: int, *, recheck_only: bool) -> Result:
    path, tests = module["path"], list(module["tests"])
    work = BUILD / name
    returncode = 0
    log = work / "mutmut.log"
    if not recheck_only:
        work = prepare(name, path, tests)
        print(f"== {name}: mutating {path}, tests {' '.join(tests)}", flush=True)
        with log.open("wb") as out:
            returncode = subprocess.run(
                [str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(jobs)],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
    meta = work / "mutants" / f"{path}.meta"
    if returncode != 0 or not meta.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
        raise SystemExit(f"mutmut failed for {name} (exit {returncode}):\n{tail}")
    codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    functions = functions_of((work / "mutants" / path).read_text(encoding="utf-8"))
    result = Result(name, path, total=len(codes))

    equivalents = {e["mutant"]: e for e in module.get("equivalent", [])}
    open_keys = []
    for key, code in codes.items():
        if code in KILLED or code in TIMEOUT:
            result.killed += 1
            continue
        local = key.rpartition(".")[2]
        entry = equivalents.get(local)
        if entry is not None:
            if entry["line"].strip() in mutant_diff(functions, key):
                result.equivalent.append(local)
                continue
            result.stale_equivalent.append(local)
        open_keys.append(key)

    if open_keys and fresh_pytest(work, "", tests) != 0:
        raise SystemExit(f"{name}: the unmutated tests fail in a fresh process; see {work}")
    covering = covering_tests(work)

    def verdict(key: str) -> bool:
        function = key.rsplit("__mutmut_", 1)[0]
        return recheck(work, key, tests, covering.get(function, []))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        verdicts = list(pool.map(verdict, open_keys))
    for key, killed in zip(open_keys, verdicts, strict=True):
        if killed:
            result.killed += 1
            result.killed_on_recheck += 1
        else:
            result.survivors[key.rpartition(".")[2]] = mutant_diff(functions, key)
    return result


def report(results: list[Result], fail_under: float) -> None:
    print()
    print(f"{'module':<14}{'mutants':>8}{'equiv.':>8}{'killed':>8}{'score':>9}  (fresh re-check)")
    for r in results:
        print(
            f"{r.name:<14}{r.total:>8}{len(r.equivalent):>8}{r.killed:>8}"
            f"{r.score:>8.1f}%  ({r.killed_on_recheck} killed only in a fresh process)"
        )
    total = sum(r.total for r in results)
    counted = sum(r.counted for r in results)
    killed = sum(r.killed for r in results)
    if counted:
        print(
            f"{'all':<14}{total:>8}{total - counted:>8}{killed:>8}{100 * killed / counted:>8.1f}%"
        )
    for r in results:
        for local in r.stale_equivalent:
            print(f"warning: {r.name}: equivalent entry {local} no longer matches; not applied")
        if r.survivors:
            print(f"\nsurvivors in {r.path}:")
            for local, diff in r.survivors.items():
                print(f"  {local}")
                for line in diff.splitlines():
                    print(f"      {line}")
    print(f"\nthreshold: {fail_under}% per module")
    BUILD.mkdir(parents=True, exist_ok=True)
    summary = {r.name: figures(r) for r in results}
    (BUILD / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def figures(result: Result) -> dict[str, Any]:
    return {
        "path": result.path,
        "mutants": result.total,
        "equivalent": result.equivalent,
        "killed": result.killed,
        "killed_on_fresh_recheck": result.killed_on_recheck,
        "score": round(result.score, 1),
        "survivors": result.survivors,
    }


def main(argv: list[str] | None = None) -> int:
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    modules: dict[str, dict[str, Any]] = config["modules"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(modules))
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")))
    parser.add_argument("--fail-under", type=float, default=float(config["fail_under"]))
    parser.add_argument(
        "--recheck-only",
        action="store_true",
        help="reuse build/mutation/<module> from an earlier run: re-check and score only",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.modules if name not in modules]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(modules)}")
    results = []
    for name in args.modules or modules:
        result = run_module(name, modules[name], args.jobs, recheck_only=args.recheck_only)
        (BUILD / f"{name}.json").write_text(json.dumps(figures(result), indent=2), encoding="utf-8")
        score = f"{result.killed}/{result.counted} killed, {result.score:.1f}%"
        print(f"   {name}: {score}", flush=True)
        results.append(result)
    report(results, args.fail_under)
    return 0 if all(r.score >= args.fail_under for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
