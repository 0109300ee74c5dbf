#!/usr/bin/env python3
"""Checks packages/ckpt/package.py against Spack's package API without Spack (which is not on PyPI):

* it compiles, and imports from nothing but `spack.package`;
* with `spack.package` stubbed by the names the recipe may use (those `from spack.package import *`
  gives in Spack 0.21 to 1.x: the `Package` base class, the directives `version`, `variant`,
  `depends_on`, `conflicts`, `license`, `maintainers`, and `which`, `join_path`), its class body runs:
  every directive gets only arguments Spack's directive takes, dependency types are Spack's, variant
  defaults and `when=` conditions name declared variants;
* `install()` runs for every combination of the variants against a stand-in spec and stage, and calls
  `bash ckpt-ffi/install.sh` with options that install.sh accepts (its `case` labels), `--no-fortran` /
  `--no-mpi` exactly when the variant is off; `setup_build_environment` sets MPIFC only with +fortran+mpi.

Run: python3 packaging/spack/check.py (from anywhere; exit 0 when every check passes).
"""

import ast
import importlib.util
import itertools
import re
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "packages" / "ckpt" / "package.py"
INSTALL_SH = HERE.parent.parent / "ckpt-ffi" / "install.sh"

# The keyword arguments of Spack's directives (spack/directives.py) that a recipe may pass.
DIRECTIVE_KWARGS = {
    "version": {"branch", "tag", "commit", "sha256", "url", "preferred", "deprecated", "submodules", "get_full_repo", "expand"},
    "variant": {"default", "description", "values", "multi", "validator", "when", "sticky"},
    "depends_on": {"when", "type", "patches"},
    "conflicts": {"when", "msg"},
    "license": {"when", "checked_by"},
    "maintainers": set(),
}
DEPENDENCY_TYPES = {"build", "link", "run", "test"}
# Spack's language virtuals and the packages a recipe here may depend on.
KNOWN_DEPENDENCIES = {"c", "cxx", "fortran", "rust", "mpi"}


class Failure(Exception):
    pass


def fail(msg):
    raise Failure(msg)


class Recorder:
    """Collects the directives of the class body being executed."""

    def __init__(self):
        self.calls = []

    def directive(self, name):
        allowed = DIRECTIVE_KWARGS[name]

        def call(*args, **kwargs):
            unknown = set(kwargs) - allowed
            if unknown:
                fail(f"{name}() has no argument(s) {sorted(unknown)} in Spack")
            self.calls.append((name, args, kwargs))

        return call


def spec_names(text):
    """The package name a dependency spec starts with: "rust@1.88:" -> "rust"."""
    return re.match(r"[a-z][a-z0-9-]*", text).group(0)


class Prefix(str):
    """Spack's Prefix: a path whose attributes are subdirectories (prefix.bin, prefix.lib)."""

    def __getattr__(self, name):
        return Prefix(f"{self}/{name}")


class Spec:
    """A concrete spec of ckpt with the given variants (and of its dependencies)."""

    def __init__(self, variants, declared):
        self.variants = variants
        self.declared = declared
        self.prefix = Prefix("/opt/spack/ckpt")
        self.mpifc = "/opt/spack/openmpi/bin/mpif90"

    def satisfies(self, constraint):
        for sign, name in re.findall(r"([+~])([a-z_]+)", constraint):
            if name not in self.declared:
                fail(f"satisfies({constraint!r}) names {name!r}, which is not a variant")
            if self.variants[name] != (sign == "+"):
                return False
        if re.sub(r"[+~][a-z_]+", "", constraint).strip():
            fail(f"satisfies({constraint!r}): only variants are checked here")
        return True

    def __contains__(self, constraint):
        return self.satisfies(constraint)

    def __getitem__(self, dep):
        if dep == "mpi" and not self.variants.get("mpi"):
            fail("spec['mpi'] used without +mpi: mpi is not a dependency then")
        if dep not in KNOWN_DEPENDENCIES:
            fail(f"spec[{dep!r}] is not a dependency")
        d = Spec(self.variants, self.declared)
        d.prefix = Prefix(f"/opt/spack/{dep}")
        return d


class Env:
    def __init__(self):
        self.values = {}

    def set(self, name, value):
        self.values[name] = str(value)

    def prepend_path(self, name, value):
        self.values[name] = str(value)


def stub_spack(recorder, runs):
    """Installs a stand-in `spack.package` module with the names the recipe may use."""

    class Package:
        def __init__(self, spec):
            self.spec = spec
            self.prefix = spec.prefix
            self.stage = types.SimpleNamespace(path="/tmp/spack-stage", source_path="/tmp/spack-stage/src")

    def which(name, required=False):
        if name != "bash":
            fail(f"which({name!r}): the recipe runs install.sh with bash")

        def run(*args):
            runs.append([name, *map(str, args)])

        return run

    def join_path(*parts):
        return "/".join(str(p) for p in parts)

    mod = types.ModuleType("spack.package")
    mod.Package = Package
    mod.which = which
    mod.join_path = join_path
    for name in DIRECTIVE_KWARGS:
        setattr(mod, name, recorder.directive(name))
    mod.__all__ = ["Package", "which", "join_path", *DIRECTIVE_KWARGS]
    spack = types.ModuleType("spack")
    spack.package = mod
    sys.modules["spack"] = spack
    sys.modules["spack.package"] = mod


def install_sh_options():
    """The options install.sh's argument loop accepts."""
    text = INSTALL_SH.read_text()
    return set(re.findall(r"^\s+(--[a-z-]+)\)", text, re.M))


def main():
    source = RECIPE.read_text()
    tree = ast.parse(source, str(RECIPE))
    compile(source, str(RECIPE), "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "spack.package":
            fail(f"line {node.lineno}: imports from {node.module}; a recipe imports from spack.package only")
        if isinstance(node, ast.Import):
            fail(f"line {node.lineno}: `import {node.names[0].name}`; a recipe imports from spack.package only")

    recorder, runs = Recorder(), []
    stub_spack(recorder, runs)
    spec_ = importlib.util.spec_from_file_location("spack_pkg_ckpt", RECIPE)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    cls = getattr(module, "Ckpt", None)
    if cls is None or not issubclass(cls, sys.modules["spack.package"].Package):
        fail("no class Ckpt(Package): Spack names the class after the package (ckpt -> Ckpt)")
    for attr in ("homepage", "git"):
        if not isinstance(getattr(cls, attr, None), str):
            fail(f"Ckpt.{attr} is missing")
    if not (cls.__doc__ or "").strip():
        fail("Ckpt has no docstring (spack info shows it)")

    variants = {a[0]: k for n, a, k in recorder.calls if n == "variant"}
    if set(variants) != {"fortran", "mpi"}:
        fail(f"the variants are {sorted(variants)}, not fortran and mpi")
    for name, kw in variants.items():
        if not isinstance(kw.get("default"), bool) or not kw.get("description"):
            fail(f"variant {name!r} needs a boolean default and a description")
    if not any(n == "version" for n, _, _ in recorder.calls):
        fail("no version()")
    for n, args, kw in recorder.calls:
        when = kw.get("when", "")
        for v in re.findall(r"[+~]([a-z_]+)", when):
            if v not in variants:
                fail(f"{n}({args[0]!r}, when={when!r}) names no variant")
        if n == "depends_on":
            if spec_names(args[0]) not in KNOWN_DEPENDENCIES:
                fail(f"depends_on({args[0]!r}): not a package this recipe should need")
            types_ = kw.get("type", ("build", "link"))
            types_ = (types_,) if isinstance(types_, str) else types_
            if not set(types_) <= DEPENDENCY_TYPES:
                fail(f"depends_on({args[0]!r}, type={types_!r}): Spack's types are {sorted(DEPENDENCY_TYPES)}")
    deps = {spec_names(a[0]): k.get("when", "") for n, a, k in recorder.calls if n == "depends_on"}
    if deps.get("mpi") != "+mpi" or deps.get("fortran") != "+fortran" or "rust" not in deps:
        fail(f"dependencies {deps}: expected rust, fortran when +fortran, mpi when +mpi")

    options = install_sh_options()
    for fortran, mpi in itertools.product([True, False], repeat=2):
        spec = Spec({"fortran": fortran, "mpi": mpi}, variants)
        pkg = cls(spec)
        env = Env()
        pkg.setup_build_environment(env)
        if ("MPIFC" in env.values) != (fortran and mpi):
            fail(f"+fortran={fortran} +mpi={mpi}: MPIFC set={'MPIFC' in env.values}")
        for var in ("CARGO", "CARGO_HOME", "CARGO_TARGET_DIR"):
            if var not in env.values:
                fail(f"setup_build_environment does not set {var}")
        runs.clear()
        pkg.install(spec, spec.prefix)
        if len(runs) != 1 or runs[0][0] != "bash" or not runs[0][1].endswith("ckpt-ffi/install.sh"):
            fail(f"install() ran {runs}, not bash ckpt-ffi/install.sh once")
        args = runs[0][2:]
        used = {a for a in args if a.startswith("--")}
        if not used <= options:
            fail(f"install.sh does not accept {sorted(used - options)} (it takes {sorted(options)})")
        if args[:2] != ["--prefix", str(spec.prefix)]:
            fail(f"install.sh {args}: --prefix PREFIX first")
        if ("--no-fortran" in args) == fortran or ("--no-mpi" in args) == mpi:
            fail(f"fortran={fortran} mpi={mpi}: install.sh {args}")
    print(f"packaging/spack: {RECIPE.relative_to(HERE)} checks out ({len(recorder.calls)} directives, 4 variant combinations)")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"packaging/spack/check.py: {e}", file=sys.stderr)
        sys.exit(1)
