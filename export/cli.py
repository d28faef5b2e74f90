"""The command lines of `python -m export` and `python -m export.release`: parsing and help need no
TensorFlow, so they answer at once; the exporter is loaded only to export."""

import os
import sys

from export.layout import CONV_TRANSPOSE_FORMS, DEFAULT_OPSET, FORMATS

LAYOUTS = ("nhwc", "nchw")  # export.optimize.LAYOUTS, here without importing onnx
from zoo import _startup
from zoo.cli import make_parser
from zoo.errors import run_cli


def export_parser():
    parser = make_parser("export", "Export a trained run to SavedModel and ONNX, checking both against the Keras "
                                   "model (a failed check writes nothing).", [
                             "runs/dae_mnist                      # -> runs/dae_mnist/export/",
                             "dae_mnist                           # the same: a preset name means runs/<preset>/",
                             "runs/conv_vae_mnist --formats onnx --opset 17 --out /tmp/conv_vae_onnx",
                             "runs/conv_ae_fashion_mnist --precision fp32,fp16,int8   # + encoder.int8.onnx, ...",
                             "runs/conv_ae_fashion_mnist --layout nchw --out /tmp/conv_ae_nchw"])
    parser.add_argument("run_dir", help="a run dir written by zoo.train, or a preset name (= runs/<preset>/)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: savedmodel,onnx (default both)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--layout", default=LAYOUTS[0],
                        help="nhwc or nchw: image layout of the ONNX files' inputs and outputs (default "
                             "%(default)s; nchw has no Transpose at the input; the SavedModel stays nhwc)")
    parser.add_argument("--conv-transpose", default=CONV_TRANSPOSE_FORMS[0], choices=CONV_TRANSPOSE_FORMS,
                        help="form of the transposed convolutions in the ONNX files: phases (one Conv per output "
                             "phase; faster on the CPU, int8 included) or slice (ConvTranspose, cropped); default "
                             "%(default)s")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated: fp32,fp16,int8 (default fp32). fp16 (GPUs) and int8 (CPUs) files are "
                             "measured against fp32 on the test split and kept only within tolerance; parity.json "
                             "says how each did")
    parser.add_argument("--out", help="output folder (default RUN_DIR/export/; replaced only if empty or an export)")
    parser.add_argument("--data-dir", help="IDX folder with the test images for the parity check "
                                           "(default: where the run's data came from)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="let TensorFlow's start-up lines through")
    return parser


def export_main(argv=None):
    args = export_parser().parse_args(argv)
    if args.verbose:
        os.environ[_startup.VERBOSE_ENV] = "1"

    def body():
        from export import exporter

        exporter.export_run(args.run_dir, formats=args.formats, opset=args.opset, out=args.out,
                            data_dir=args.data_dir, verbose=0 if args.quiet else 1, layout=args.layout,
                            precisions=args.precision, conv_transpose=args.conv_transpose)
        return 0

    return run_cli(body, interrupted="Interrupted; nothing was written (the previous export, if any, is unchanged).")


def release_parser():
    parser = make_parser("export.release", "Write release bundles (encoder.onnx, decoder.onnx, the Keras weights as a "
                                           "map into them, manifest.json, SHA256SUMS; every weight stored once) for "
                                           "trained runs; a run not yet exported is exported first.", [
                             "runs/dae_mnist runs/conv_ae_fashion_mnist --out dist/",
                             "runs/*_fashion_mnist --out releases/v0.2 --quiet   # the release aezoo ships",
                             "dae_mnist --reexport --opset 18",
                             "runs/*_fashion_mnist --out dist/ --precision fp32,int8   # + the int8 files that passed"])
    parser.add_argument("run_dirs", nargs="+", help="run dirs written by zoo.train, or preset names (= runs/<preset>/)")
    parser.add_argument("--out", default="dist", help="release folder (default %(default)s/; must be new, empty or "
                                                      "a release)")
    parser.add_argument("--name", help="release name written in the manifests (default: the --out folder's name)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--data-dir", help="IDX folder with test images, if a run must be exported first")
    parser.add_argument("--reexport", action="store_true", help="export again even if RUN_DIR/export/ is current")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated precisions to ship: fp32 (always), fp16, int8; a variant ships only if "
                             "it passed its accuracy check at export (default %(default)s)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def release_main(argv=None):
    args = release_parser().parse_args(argv)

    def body():
        from export import release

        release.release(args.run_dirs, args.out, data_dir=args.data_dir, opset=args.opset, reexport=args.reexport,
                        verbose=0 if args.quiet else 1, release_name=args.name, precisions=args.precision)
        return 0

    return run_cli(body, interrupted="Interrupted; bundles already written are whole, the one in progress was not "
                                     "written. Run the command again to finish.")


if __name__ == "__main__":
    sys.exit(export_main())
