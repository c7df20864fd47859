"""What each number verify reports means, written once.

Both reports show these definitions (pipeline/release/report_view.py picks the ones a
release has), and docs/reference/metrics.md is generated from them
(pipeline/metrics_reference.py; a test fails when the committed page drifts). The numbers
themselves come from verify/ (metrics, evidence, representation, gates) and are recomputed by
``pipeline verify``.
"""

from __future__ import annotations

# (name, definition) in the order the reports list them
DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("Acc_F", "top-1 accuracy of the model on the test images of the forgotten classes "
              "(lower is better; the acc_f gate asks for at most its threshold)."),
    ("Acc_R", "top-1 accuracy on the test images of every retained class."),
    ("ΔAcc_R", "Acc_R of the unlearned model minus Acc_R of the original, both run by onnxruntime on "
               "the same test images (negative: retained accuracy lost)."),
    ("95 % interval", "Wilson score interval of an accuracy over its n test images; for ΔAcc_R, "
                      "Newcombe's interval from the two Wilson intervals (it treats the two runs as "
                      "independent, so on the same images it is conservative)."),
    ("per-class accuracy", "the fraction of a class's test images predicted as that class."),
    ("D_intra", "mean distance of the forgotten classes' test features to their own class centroid "
                "(features: the input of the classifier head, i.e. the penultimate layer)."),
    ("D_inter", "mean distance from each forgotten class's feature centroid to each retained "
                "class's centroid."),
    ("Ratio_D", "D_inter / D_intra: how separable the forgotten classes still are in feature "
                "space (smaller: less separable)."),
    ("probe AUC", "ROC AUC of a logistic regression trained on training-split features to tell "
                  "forgotten from retained classes, scored on the test split: what anyone holding "
                  "the ONNX file could recover (0.5: nothing)."),
    ("MIA-efficacy", "the fraction of the forgotten classes' training images that a membership-"
                     "inference attack (RBF SVM on the true-label probability, trained on retained "
                     "members vs. non-members) judges non-members (higher: they look unseen)."),
    ("parity", "largest |ONNX − PyTorch| over the logits of the first ≤ 1,024 test images: the "
               "shipped file computes what the fine-tuned model computes."),
    ("PCA", "a 2-D projection fitted on the original model's test features and applied unchanged to "
            "every panel, so positions can be compared between panels."),
    ("relearning", "verify.evidence.relearn: the model with its forgotten head rows re-initialised is fine-tuned "
                   "on k held-out samples of each forgotten class plus as many retained ones (fixed SGD budget); "
                   "steps until Acc_F reaches 0.5 and the area under its Acc_F curve (relearn AUC), beside the "
                   "original under the same draws. A class only hidden comes back as fast as in the original."),
    ("LPR_F / LPR_R", "linear-probe recovery: a fresh multinomial logistic regression on standardised "
                      "features of a seeded class-balanced training subset of all classes, scored on the "
                      "forgotten / retained classes' test images: what a new head on the shipped features "
                      "recovers."),
    ("CKA", "linear centred kernel alignment of two models' features on the same test images "
            "(1: the same representation up to rotation and scale)."),
    ("forgetting level", "output: the file never outputs the forgotten classes (output_masked); "
                         "representation: the features too, judged against a retrained reference "
                         "(docs: Evidence, levels of forgetting)."),
)

# the representation audit's terms: shown where a release has the audit
REPRESENTATION_TERMS = ("LPR_F / LPR_R", "CKA", "forgetting level")
