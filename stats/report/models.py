"""Report sections about the audited models: the latent space searched, and the discriminator check.

    <out>/discriminator.parquet   image_id, split, score, classified_real (stats.detect.discriminator.DISCRIMINATOR_SCHEMA)
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stats.detect.discriminator import discriminator_summary, ks_auc
from stats.errors import StatsError
from stats.report.html import escape, img, table
from stats.report.plots import scores_png, split_colors
from stats.text import number

DISCRIMINATOR_FILE = "discriminator.parquet"
SPACE_TEXT = {
    "z": "Z, the generator's input latent",
    "w": "W: one intermediate latent w = mapping(z), the same for every synthesis layer",
    "w_plus": "W+: one w per synthesis layer",
}


def read_discriminator(out_url: str, *, storage_options: dict[str, Any] | None = None) -> pa.Table | None:
    """discriminator.parquet under an output, or None when the check did not run."""
    from stats.io import open_output

    fs, root = open_output(out_url, storage_options)
    path = posixpath.join(root, DISCRIMINATOR_FILE)
    try:
        return pq.read_table(path, filesystem=fs) if fs.exists(path) else None
    except (OSError, pa.ArrowInvalid) as exc:
        raise StatsError(f"{path}: cannot read as Parquet ({exc})") from None


def space_section(run_info: dict[str, Any] | None) -> str:
    """Which space the search ran in (style-based generators), whether classes were searched, and the W+ warning."""
    generator = ((run_info or {}).get("config") or {}).get("generator") or {}
    search = (run_info or {}).get("search") or {}  # the job's record of the generator as loaded
    space, classes = generator.get("space") or (search.get("space") if search.get("style_based") else None), generator.get("classes")
    if not space and not classes:
        return ""
    parts = ['<section id="space"><h2>Search space</h2>']
    if space:
        parts.append(f"<p>The search ran in {escape(SPACE_TEXT.get(space, space))}; noise inputs: "
                     f"{escape(generator.get('noise') or 'const')}; truncation off.</p>")
    if space == "w_plus":
        parts.append('<p class="warning">W+ can reconstruct almost any image, out-of-domain ones included, so unseen '
                     "images are recovered nearly as well as training images: a W+ audit has less power to tell train "
                     "from val. &ldquo;No evidence&rdquo; in W+ is weaker than in W.</p>")
    if classes:
        names = classes.get("names") or []
        parts.append(f"<p>Conditional generator, {len(names)} classes ({escape(classes.get('encoding', 'one_hot'))}). "
                     "Images with a label are searched in their class; for images without one the class is searched with "
                     "the starts (each start's screening draws are spread over the classes and the best class and draw "
                     "start the search); generated images use the class they were drawn with.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def discriminator_section(scores: pa.Table | None, colors: dict[str, str] | None = None, *, a: str = "train",
                          b: str = "val") -> str:
    """The score histograms per split first; then mean score and fraction classified real, KS and AUC of train
    against val."""
    if scores is None or scores.num_rows == 0:
        return ""
    summary = discriminator_summary(scores).to_pylist()
    numbers = ks_auc(scores, a=a, b=b)
    splits = [r["split"] for r in summary]
    colors = {s: (colors or {}).get(s) or split_colors(splits)[s] for s in splits}
    per_split = {s: scores.filter(pc.equal(scores.column("split"), s)).column("score").to_numpy().astype(np.float64)
                 for s in splits}
    parts = ['<section id="discriminator"><h2>Discriminator check</h2>',
             f'<div class="figures">{img(scores_png(per_split, colors), "discriminator score histograms per split")}'
             "</div>",
             "<p>The GAN's discriminator scored every image (Brock et al.; &ldquo;GAN Discriminators Don't "
             "Generalize?&rdquo;). A discriminator that calls training images real and held-out images fake has "
             "memorized its training set, which is evidence about the generator trained against it.</p>",
             table(["split", "images", "mean score", "classified real"],
                   [[r["split"], r["count"], r["mean_score"], f"{r['fraction_real']:.1%}"] for r in summary], text_columns=(3,))]
    if numbers:
        parts.append(f"<p>{escape(a)} against {escape(b)}: AUC {number(numbers['auc'])} (one-sided Mann-Whitney p = "
                     f"{number(numbers['auc_pvalue'], 2)}), KS {number(numbers['ks_statistic'])} "
                     f"(p = {number(numbers['ks_pvalue'], 2)}). AUC 0.5: D cannot tell them apart.</p>")
    parts.append("</section>")
    return "\n".join(parts)
