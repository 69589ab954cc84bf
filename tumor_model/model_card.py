"""A model card (markdown) for one released model version: data, splits, metrics, calibration, limits, use."""

from __future__ import annotations

from typing import Any

INTENDED_USE = (
    "Decision support for radiologists reading brain MRI: the model sorts a single 2-D slice into glioma, "
    "meningioma, pituitary tumour or no tumour, to help prioritise the reading list. It is not a diagnosis. "
    "Every prediction is to be confirmed by a radiologist; predictions flagged `refer_to_radiologist` "
    "(confidence below the release's threshold) first."
)

GENERAL_LIMITS = (
    "Trained on 2-D slices, not volumes: it sees one slice and no clinical context.",
    "Only the four classes above exist for it: other lesions (metastases, abscesses, other tumour types) "
    "are forced into one of them.",
    "Test figures come from images of the same sources as the training data; performance on another scanner, "
    "protocol or population is unknown until measured on it.",
    "The split keeps exact and near-duplicate images together, but not different slices of the same patient "
    "when the source does not say which slices belong together.",
)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_model_card(info: dict[str, Any]) -> str:
    """Markdown model card from a release's `model.json` content (before or after its file checksums are added).

    Args:
        info: `model_name`, `version`, `labels`, `image_size`, `preprocessing`, `dataset_version`, and when known
            `evaluation` (test metrics), `data` (images per class and split), `training` (params), `gates`
            (gate report), `approval`, `referral_confidence`.
    """
    evaluation = info.get("evaluation") or {}
    lines = [
        f"# Model card: {info['model_name']} version {info['version']}",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Model",
        "",
        f"- Architecture: EfficientNetB3 backbone, global average pooling, dropout, softmax over {len(info['labels'])} "
        f"classes ({', '.join(info['labels'])}).",
        f"- Input: {info['image_size']}x{info['image_size']} RGB, preprocessing `{info['preprocessing']}` "
        "(the one function shared by training, evaluation and serving).",
        f"- MLflow run: `{info.get('mlflow_run_id', 'unknown')}`; git commit `{info.get('git_commit', 'unknown')}`.",
    ]
    training = info.get("training") or {}
    if training:
        lines.append("- Training: " + ", ".join(f"{k} = {v}" for k, v in sorted(training.items())) + ".")
    if info.get("referral_confidence") is not None:
        lines.append(f"- Referral threshold: confidence below {info['referral_confidence']:.2f} is flagged.")
    for runtime, figures in sorted((info.get("runtimes") or {}).items()):
        if "passed" in figures:
            verdict = "may serve" if figures["passed"] else "may not serve"
            speed = f", {figures['images_per_second']} images/s" if "images_per_second" in figures else ""
            lines.append(f"- Runtime `{runtime}` {verdict}: {figures.get('reason', '')}{speed}.")

    lines += ["", "## Data", "", f"Dataset version `{info.get('dataset_version', 'unknown')}`."]
    data = info.get("data") or {}
    if data:
        splits = ("train", "val", "test")
        lines += ["", "| class | " + " | ".join(splits) + " |", "| --- |" + " ---: |" * len(splits)]
        for label in info["labels"]:
            counts = data.get(label, {})
            lines.append(f"| {label} | " + " | ".join(str(counts.get(s, 0)) for s in splits) + " |")
        lines += [
            "",
            "Splits follow image groups (exact and near-duplicates together), so no group spans two splits. "
            "Early stopping and model selection use the validation split; the test split is used once, here.",
        ]

    if evaluation:
        lines += [
            "",
            f"## Test metrics ({evaluation.get('n', '?')} images)",
            "",
            f"- Accuracy {_pct(evaluation.get('accuracy'))}, macro F1 {_num(evaluation.get('macro_f1'))}, "
            f"macro one-vs-rest ROC AUC {_num(evaluation.get('macro_roc_auc'))}.",
            "",
            "| class | sensitivity (recall) | specificity | precision | F1 | ROC AUC | test images |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, values in (evaluation.get("per_class") or {}).items():
            lines.append(
                f"| {label} | {_pct(values['recall'])} | {_pct(values['specificity'])} | {_pct(values['precision'])} "
                f"| {_num(values['f1'])} | {_num(values.get('roc_auc'))} | {values['support']} |"
            )
        matrix = evaluation.get("confusion_matrix")
        if matrix:
            labels = evaluation.get("class_names") or info["labels"]
            lines += ["", "Confusion matrix (rows: true class, columns: predicted):", ""]
            lines += ["| true \\ predicted | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
            lines += [
                f"| {label} | " + " | ".join(str(v) for v in row) + " |"
                for label, row in zip(labels, matrix, strict=True)
            ]
        lines += [
            "",
            "## Calibration",
            "",
            f"Expected calibration error (15 bins): {_num(evaluation.get('ece'))}. "
            "A well-calibrated model's confidence matches how often it is right.",
            "",
            "| confidence bin | images | mean confidence | accuracy |",
            "| --- | ---: | ---: | ---: |",
        ]
        for item in evaluation.get("reliability") or []:
            lines.append(
                f"| {item['lower']:.2f}-{item['upper']:.2f} | {item['count']} | {item['confidence']:.3f} "
                f"| {item['accuracy']:.3f} |"
            )

    gates = info.get("gates") or {}
    if gates.get("results"):
        lines += [
            "",
            "## Promotion gates",
            "",
            f"Champion compared on the same images: version {gates.get('champion_version') or 'none (first release)'}.",
            "",
            "| gate | candidate | champion | threshold | verdict |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for gate in gates["results"]:
            lines.append(
                f"| {gate['name']} | {_num(gate['candidate'])} | {_num(gate['champion'])} "
                f"| {gate['comparison']} {gate['threshold']:.3f} | {'pass' if gate['passed'] else '**FAIL**'} |"
            )
    approval = info.get("approval") or {}
    if approval:
        override = " **with override of failed gates**" if approval.get("override") else ""
        lines += [
            "",
            "## Approval",
            "",
            f"{approval.get('status', 'unknown')} by {approval.get('by', 'unknown')} at {approval.get('at', '?')}"
            f"{override}: {approval.get('reason', '')}",
        ]

    limits = list(GENERAL_LIMITS)
    for label, values in (evaluation.get("per_class") or {}).items():
        if values["support"] < 30:
            limits.append(f"Only {values['support']} {label} test images: its figures have wide uncertainty.")
    if evaluation.get("ece") is not None and evaluation["ece"] > 0.05:
        limits.append(f"Confidence is not well calibrated (ECE {evaluation['ece']:.3f}): read it as a ranking.")
    lines += ["", "## Known limits", ""] + [f"- {item}" for item in limits]
    return "\n".join(lines) + "\n"
