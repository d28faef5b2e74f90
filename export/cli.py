"""The command lines of `python -m export` and `python -m export.release`: parsing and help need no
TensorFlow, so they answer at once; the exporter is loaded only to export."""

import argparse
import sys

from export.layout import DEFAULT_OPSET, FORMATS
from zoo.errors import run_cli


def _parser(prog, description, examples):
    return argparse.ArgumentParser(prog=prog, description=description, epilog="examples:\n" + examples,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def export_parser(prog="python -m export"):
    parser = _parser(prog, "Export a trained run to SavedModel and ONNX, checking both against the Keras model "
                           "(a failed check writes nothing).",
                     "  {0} runs/dae_mnist                      # -> runs/dae_mnist/export/\n"
                     "  {0} dae_mnist                           # the same: a preset name means runs/<preset>/\n"
                     "  {0} runs/conv_vae_mnist --formats onnx --opset 17 --out /tmp/conv_vae_onnx".format(prog))
    parser.add_argument("run_dir", help="a run dir written by zoo.train, or a preset name (= runs/<preset>/)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: savedmodel,onnx (default both)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--out", help="output folder (default RUN_DIR/export/; replaced only if empty or an export)")
    parser.add_argument("--data-dir", help="IDX folder with the test images for the parity check "
                                           "(default: where the run's data came from)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def export_main(argv=None, prog="python -m export"):
    args = export_parser(prog).parse_args(argv)

    def body():
        from export import exporter

        exporter.export_run(args.run_dir, formats=args.formats, opset=args.opset, out=args.out,
                            data_dir=args.data_dir, verbose=0 if args.quiet else 1)
        return 0

    return run_cli(body, interrupted="Interrupted; nothing was written (the previous export, if any, is unchanged).")


def release_parser(prog="python -m export.release"):
    parser = _parser(prog, "Write release bundles (ONNX, SavedModel .tar.gz, model.keras, manifest.json, SHA256SUMS) "
                           "for trained runs; a run not yet exported is exported first.",
                     "  {0} runs/dae_mnist runs/conv_ae_fashion_mnist --out dist/\n"
                     "  {0} runs/*_fashion_mnist --out dist/ --quiet\n"
                     "  {0} dae_mnist --reexport --opset 18".format(prog))
    parser.add_argument("run_dirs", nargs="+", help="run dirs written by zoo.train, or preset names (= runs/<preset>/)")
    parser.add_argument("--out", default="dist", help="release folder (default %(default)s/; must be new, empty or "
                                                      "a release)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--data-dir", help="IDX folder with test images, if a run must be exported first")
    parser.add_argument("--reexport", action="store_true", help="export again even if RUN_DIR/export/ is current")
    parser.add_argument("--quiet", action="store_true")
    return parser


def release_main(argv=None, prog="python -m export.release"):
    args = release_parser(prog).parse_args(argv)

    def body():
        from export import release

        release.release(args.run_dirs, args.out, data_dir=args.data_dir, opset=args.opset, reexport=args.reexport,
                        verbose=0 if args.quiet else 1)
        return 0

    return run_cli(body, interrupted="Interrupted; bundles already written are whole, the one in progress was not "
                                     "written. Run the command again to finish.")


if __name__ == "__main__":
    sys.exit(export_main())
