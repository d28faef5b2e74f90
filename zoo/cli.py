"""`aezoo`: one console command for the zoo's tools. `aezoo train ...` runs exactly `python -m zoo.train ...`
(the same function, the same help); each subcommand loads its module only when it is called."""

import argparse
import importlib
import os
import sys

#: subcommand -> (its `python -m` form, the module and function that implement it, what it does)
COMMANDS = {
    "train": ("zoo.train", "zoo.train:main", "train a preset into a run dir"),
    "data": ("zoo.data", "zoo.data:main", "say where a dataset would be read from"),
    "export": ("export", "export.cli:export_main", "export a run to SavedModel and ONNX, with a parity check"),
    "release": ("export.release", "export.cli:release_main", "write release bundles with checksums"),
    "weights": ("zoo.weights", "zoo.weights:main", "list and fetch released weights"),
    "runtime": ("export.runtime", "export.runtime:main", "run an exported model with onnxruntime (no TensorFlow)"),
    "search": ("zoo.search", "zoo.search:main", "index images by their codes and find similar ones (FAISS)"),
    "bench": ("benchmarks.throughput", "benchmarks.throughput:main", "onnxruntime vs TensorFlow throughput"),
    "quality": ("benchmarks.quality", "benchmarks.quality:main",
                "reconstruction, retrieval and denoising quality of trained runs"),
    "cards": ("benchmarks.cards", "benchmarks.cards:main", "regenerate MODEL_CARDS.md from the results"),
}
MODULE_FORMS = {module: name for name, (module, _, _) in COMMANDS.items()}


def make_parser(module, description, examples, **kwargs):
    """The parser of `python -m MODULE` and of `aezoo NAME` alike: one prog, so both print the same help,
    which ends with real examples."""
    name = MODULE_FORMS[module]
    prog = "aezoo " + name
    return argparse.ArgumentParser(
        prog=prog, description="{} (also: python -m {})".format(description, module),
        epilog="examples:\n" + "\n".join("  {} {}".format(prog, e) for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _version():
    from zoo import __version__

    return "aezoo {} (Python {})".format(__version__, sys.version.split()[0])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="aezoo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A Keras 3 model zoo of autoencoders: train, export, release, fetch and run them.",
        epilog="commands:\n" + "\n".join("  {:<9} {} (python -m {})".format(n, h, m) for n, (m, _, h) in
                                           COMMANDS.items())
        + "\n\nexamples:\n  aezoo train --list\n  aezoo train dae_mnist --epochs 5\n  aezoo export runs/dae_mnist"
          "\n\n`aezoo COMMAND --help` tells more.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--verbose", action="store_true",
                        help="let TensorFlow's start-up lines through (or set AEZOO_VERBOSE=1)")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help=", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.verbose:
        from zoo import _startup

        os.environ[_startup.VERBOSE_ENV] = "1"
    module, function = COMMANDS[args.command][1].split(":")
    main_function = getattr(importlib.import_module(module), function)
    if module == "export.runtime":  # a standalone file: it does not know the aezoo name by itself
        return main_function(args.args, prog="aezoo runtime")
    return main_function(args.args)

if __name__ == "__main__":
    sys.exit(main())
