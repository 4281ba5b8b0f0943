"""Import a model this project did not train as an artifact folder the other jobs read as an old
model: a TorchScript or ONNX file or a timm architecture with its weights (copied in, checked on
its declared preprocessing), or only its embeddings of the dataset's splits."""

from __future__ import annotations

from jobs import cli
from pipeline.config import ImportedModelConfig, read_yaml, validate


def main() -> None:
    parser = cli.job_parser("import_model", __doc__, "dataset",
                            config="YAML of pipeline.config.ImportedModelConfig (name, source, classes)",
                            out="artifact folder to write")
    args = parser.parse_args()
    from pipeline.data.dataset import class_names, read_dataset_info
    from pipeline.model.encoders import import_model

    cfg = validate(ImportedModelConfig, read_yaml(args.config), args.config)
    dataset_classes = read_dataset_info(args.dataset).classes
    classes = class_names(dataset_classes, cfg.classes)
    print(f"model artifact: {import_model(cfg, classes, args.out)}")


if __name__ == "__main__":
    cli.run_main(main)
