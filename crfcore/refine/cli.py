"""The ``crfcore refine IMAGES --scores SCORES --out OUT [CRF parameters]`` subcommand: its arguments and its run."""

import argparse
import sys

from .._argtypes import positive_float, positive_int
from ..params import NORMALIZATIONS
from .files import CRF_DEFAULTS, print_summary, refine_files
from .imageio import WriteError
from .tiling import DEFAULT_OVERLAP


def non_negative_int(text):
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def memory(text):
    """Bytes from ``500M``, ``8G``, ``1.5G`` or a plain number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().rstrip("B")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 8G, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return int(value)


def dask_address(text):
    """``local``, ``local:N`` (N >= 1) or a scheduler address such as ``tcp://host:8786``."""
    if text == "local":
        return text
    if text.startswith("local:"):
        n = text.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"local:N needs a number of workers N >= 1, got {text!r}")
        return text
    if "://" not in text and ":" not in text:
        raise argparse.ArgumentTypeError(f"expected local, local:N or a scheduler address such as "
                                         f"tcp://host:8786, got {text!r}")
    return text


def gt_prob(text):
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


DESCRIPTION = (
    "Run the dense CRF's mean field on every image of IMAGES with its scores (matched by file stem) and write "
    "OUT/<stem>.png label maps (the label index as the pixel value, with a palette for viewing). Outputs are written "
    "atomically and a rerun skips what is done; bad inputs are reported, skipped and listed in OUT/failures.csv (the "
    "exit status is 1 then), as are inputs too large to decode within --max-memory. Large images are refined on "
    "overlapping tiles in bounded memory. An output that cannot be written (a full disk) stops the run: free space "
    "and rerun to continue. A second run into the same OUT while one is writing there is refused.")


def add_arguments(r):
    """The subcommand's arguments, on the argparse parser ``r``."""
    r.add_argument("images", metavar="IMAGES", help="folder, glob pattern or file of PNG, JPEG or TIFF images")
    r.add_argument("--scores", required=True, help="folder, glob or file of per-pixel scores: .npy/.npz (H, W, L) "
                                                   "channels last, or .png label maps")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--scores-are", choices=["probs", "logits"], default="probs",
                   help="what .npy/.npz scores hold (default probs)")
    r.add_argument("--n-labels", type=positive_int, default=None, help="number of labels, checked on every file")
    r.add_argument("--gt-prob", type=gt_prob, default=0.7,
                   help="label maps: probability of the given label (pydensecrf's unary_from_labels; default 0.7)")
    r.add_argument("--unknown-label", type=non_negative_int, default=None,
                   help="label maps: the value meaning 'unknown' (uniform); 0 makes the labels 1..L as pydensecrf's "
                        "zero_unsure")
    r.add_argument("--save-probs", action="store_true", help="also write OUT/<stem>.npy float16 probabilities")
    r.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    r.add_argument("--tile", type=positive_int, default=None,
                   help="refine on tiles of this many pixels a side, at least --overlap (default: only images too "
                        "large for --max-memory, automatically)")
    r.add_argument("--overlap", type=non_negative_int, default=DEFAULT_OVERLAP,
                   help=f"margin of every tile in pixels (default {DEFAULT_OVERLAP})")
    r.add_argument("--max-memory", type=memory, default=None,
                   help="memory for one image, e.g. 4G: its mean field is tiled to fit, and inputs that would need "
                        "more to decode are failures (default: a quarter of RAM per process)")
    r.add_argument("--dask", type=dask_address, default=None, metavar="SCHEDULER",
                   help="spread the files over a Dask cluster: a scheduler address (tcp://host:8786), or local[:N] "
                        "for N local worker processes")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    crf = r.add_argument_group("CRF parameters (crfcore.meanfield's; theta_beta is in the images' units: 0-255 "
                               "for 8-bit, 0-65535 for 16-bit)")
    crf.add_argument("--n-iter", type=non_negative_int, default=CRF_DEFAULTS["n_iter"])
    for name in ("theta_alpha", "theta_beta", "theta_gamma", "w_bilateral", "w_spatial"):
        crf.add_argument("--" + name.replace("_", "-"), type=float if name.startswith("w_") else positive_float,
                         default=CRF_DEFAULTS[name], help=f"default {CRF_DEFAULTS[name]}")
    crf.add_argument("--normalization", choices=NORMALIZATIONS, default=CRF_DEFAULTS["normalization"])
    return r


def run(args):
    """Run the parsed arguments; returns the exit status (0 done, 1 some files failed, 2 bad arguments)."""
    crf = {k: getattr(args, k) for k in CRF_DEFAULTS}
    try:
        summary = refine_files(args.images, args.scores, args.out, scores_are=args.scores_are,
                               n_labels=args.n_labels, gt_prob=args.gt_prob, unknown_label=args.unknown_label,
                               save_probs=args.save_probs, overwrite=args.overwrite, tile=args.tile,
                               overlap=args.overlap, max_memory=args.max_memory, dask=args.dask,
                               progress=not args.no_progress, **crf)
    except WriteError as exc:  # a full disk: what was finished is kept and recorded
        print(f"error: {exc}; the images finished are kept: make room and rerun the same command to continue",
              file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, ImportError) as exc:  # FileNotFoundError and connection errors too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary, args.out)
    return 1 if summary.failed else 0
