"""Analyses of cached runs: per-layer hidden-state metrics, the logit lens, direct logit
attribution, per-token component contribution, and metric-vs-impact correlation."""

from .attribution import direct_logit_attribution, frozen_final_norm, logit_attribution, logit_direction
from .contributions import compared_paths, contributions_html, token_contributions
from .correlation import correlation, metric_impact_correlation
from .logit_lens import decode_resid, logit_lens_kl, logit_lens_logits, logit_lens_top_k
from .metrics import ablation_kl, hidden_state_metrics, layer_metrics

__all__ = [
    "ablation_kl", "compared_paths", "contributions_html", "correlation", "decode_resid",
    "direct_logit_attribution", "frozen_final_norm", "hidden_state_metrics", "layer_metrics", "logit_attribution",
    "logit_direction", "logit_lens_kl", "logit_lens_logits", "logit_lens_top_k", "metric_impact_correlation",
    "token_contributions",
]
