"""Measure a trained checkpoint's landmark template again and write the checkpoint with it.

    python -m training.retemplate age_gender --data ../shared/data/utkface/UTKFace \
        --weights models/weights/age_gender.pt --out models/weights/age_gender.pt

The template only tells serving how to frame a detected face like the training crops
(``models.preprocess.align_face``); the weights never saw it (training reads the data-set crops as they
are). So a template measured wrongly can be replaced without retraining: the figures on the data set's
splits do not change, only what served faces look like to the model. The card keeps the template it had
(``training.template_before``) beside the new measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from models.checkpoint import load_checkpoint, save_checkpoint
from training.tasks import TASKS, load_task_data
from training.template import PAD, measure_template

log = logging.getLogger("training.retemplate")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.retemplate", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=600, help="training images to measure on (seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loaded = load_checkpoint(a.weights, a.task)
    card = loaded.card
    split_seed = int(card.training.get("data", {}).get("split_seed", a.seed))
    data = load_task_data(a.task, a.data, seed=split_seed, cache_dir=a.cache_dir)
    train_split = next(s for s in data.splits if s not in (data.select_split, data.test_split))
    result = measure_template(data.load_for_template, data.splits[train_split], n_samples=a.samples, seed=a.seed,
                              upscale=data.template_upscale)
    if not result.measured:
        raise SystemExit("too few faces detected to measure a template; the checkpoint is left as it was")
    before = [list(p) for p in card.preprocess.template]
    card.preprocess = dataclasses.replace(card.preprocess, template=result.template)
    card.training = {**card.training, "template_before": card.training.get("template", {"template": before}),
                     "template": {**result.to_dict(), "pad": PAD, "remeasured_by": "training.retemplate"}}
    save_checkpoint(a.out, loaded.model, card)
    report = {"before": before, "after": [list(p) for p in result.template], "detected": result.n_detected,
              "sampled": result.n_sampled}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
