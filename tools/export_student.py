"""Export the bare student of a KD training checkpoint (or re-export a plain one).

    python tools/export_student.py --cfg_file cfgs/kd/itkd_centerpoint.yaml --ckpt CKPT --out student.pth

The output ``{'model_state', 'epoch', 'it', 'version'}`` loads strictly into the plain student config (the KD
config without its KD block).
"""
import argparse
import logging

from pcdet.config import cfg_from_list, cfg_from_yaml_file
from pcdet.kd import export_student_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg_file", required=True, help="KD or plain student config")
    parser.add_argument("--ckpt", required=True, help="training checkpoint (plain or KD)")
    parser.add_argument("--out", required=True, help="output path of the bare student checkpoint")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = cfg_from_yaml_file(args.cfg_file)
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs, cfg)
    export_student_checkpoint(cfg, args.ckpt, args.out, logging.getLogger("export_student"))


if __name__ == "__main__":
    main()
