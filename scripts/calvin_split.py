"""Write a CALVIN split directory (``DIR/.hydra/merged_config.yaml``) from the installed calvin_env.

``roboflamingo eval eval.calvin_dataset=DIR`` then runs without a downloaded CALVIN dataset: evaluation
reads nothing else from a split. Usage: ``python scripts/calvin_split.py DIR [--tiny-renderer]``.
"""

import argparse
import json

from roboflamingo.eval.calvin_adapter import write_split_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--tiny-renderer", action="store_true", help="PyBullet's CPU renderer instead of EGL")
    args = parser.parse_args()
    split = write_split_config(args.directory, use_egl=not args.tiny_renderer)
    print(json.dumps({"split": str(split), "config": str(split / ".hydra" / "merged_config.yaml")}))


if __name__ == "__main__":
    main()
