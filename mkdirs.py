"""Create the DATA_FOLDER tree (DESIGN §4).

    python mkdirs.py --dataroot DATA
"""

from mvfr.datafolder import DataFolder
from options import parse_options


def main() -> None:
    opt = parse_options("mkdirs")
    folder = DataFolder(opt.dataroot)
    folder.make_tree()
    print(f"created {len(folder.tree())} folders under {folder.root}")


if __name__ == "__main__":
    main()
