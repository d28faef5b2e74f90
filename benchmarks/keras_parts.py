"""The Keras side of an exported part, for the baseline workers: the model rebuilt from its run dir
(config.json + model.keras, or + model.weights.h5 as `gpu_benchmark.sh --prepare` writes it) or release bundle
(manifest.json + keras_weights.json), and the function each ONNX part computes, as export.exporter's endpoints
define it. Imports Keras (any backend) only when called.

    python -m benchmarks.keras_parts weights RUN_DIR OUT_DIR    # OUT_DIR/model.weights.h5: no optimizer state
"""

import sys
from pathlib import Path

#: The Keras weights alone (no optimizer state): what a prepared GPU input carries instead of model.keras.
WEIGHTS_FILE = "model.weights.h5"


def load_model(source, dtype_policy=None):
    """The Keras model of `source` ({"kind": "run" | "bundle", "path": ...}, see benchmarks.discovery), built
    under `dtype_policy` (e.g. "mixed_bfloat16": bfloat16 compute, float32 variables) when given."""
    import keras

    import zoo
    from zoo import schema

    path = Path(source["path"])
    previous = keras.config.dtype_policy()
    if dtype_policy is not None:
        keras.config.set_dtype_policy(dtype_policy)
    try:
        if source["kind"] == "run":
            config = schema.RunConfig.load(path)
            model = zoo.get_class(config.model).from_config(config.model_config)
            weights = path / WEIGHTS_FILE
            model.load_weights(weights if weights.is_file() else path / schema.MODEL)
        elif source["kind"] == "bundle":
            from zoo import pretrained

            manifest = schema.Manifest.load(path)
            model = pretrained.load_into(zoo.get_class(manifest.model).from_config(manifest.model_config), path)
        else:
            raise ValueError("unknown Keras source kind {!r}".format(source["kind"]))
    finally:
        keras.config.set_dtype_policy(previous)
    return model


def part_function(model, part):
    """x -> list of outputs of `part` ("encoder", "decoder", "autoencoder"), in the ONNX file's output order:
    the encoder's codes (z_mean, z_log_var for a VAE), the decoder's images, or decoder(first code)."""
    encoder, decoder = model.encoder, model.decoder

    def codes(x):
        out = encoder(x, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    if part == "encoder":
        return codes
    if part == "decoder":
        return lambda z: [decoder(z, training=False)]
    if part == "autoencoder":
        return lambda x: [decoder(codes(x)[0], training=False)]
    raise ValueError("unknown part {!r}".format(part))


def variables_of(model, part):
    """The Keras variables `part_function(model, part)` reads, each once."""
    nets = {"encoder": [model.encoder], "decoder": [model.decoder],
            "autoencoder": [model.encoder, model.decoder]}[part]
    seen, result = set(), []
    for net in nets:
        for variable in net.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                result.append(variable)
    return result


def save_weights(run_dir, out_dir):
    """OUT_DIR/model.weights.h5: the weights of RUN_DIR's model, without the optimizer state model.keras keeps."""
    source = {"kind": "run", "path": str(run_dir)}
    path = Path(out_dir) / WEIGHTS_FILE
    load_model(source).save_weights(path)
    return path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] != "weights":
        print("usage: python -m benchmarks.keras_parts weights RUN_DIR OUT_DIR", file=sys.stderr)
        return 2
    path = save_weights(argv[1], argv[2])
    print("{}: {:.1f} MB".format(path, path.stat().st_size / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
