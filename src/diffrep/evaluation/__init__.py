"""Evaluation: metric encoders, the feature cache, the metric registry, and :func:`evaluate` over them."""

from diffrep.evaluation.encoders import ENCODERS, Encoded, Encoder, EncoderSpec, encoder_from_module, get_encoder
from diffrep.evaluation.evaluate import (DEFAULT_METRICS, EvalSet, evaluate, format_table, load_encoders, load_eval_set,
                                         plot_curves)
from diffrep.evaluation.features import FeatureCache, extract_features
from diffrep.evaluation.registry import METRICS, Metric, get_metric

__all__ = ["DEFAULT_METRICS", "ENCODERS", "METRICS", "Encoded", "Encoder", "EncoderSpec", "EvalSet", "FeatureCache",
           "Metric", "encoder_from_module", "evaluate", "extract_features", "format_table", "get_encoder", "get_metric",
           "load_encoders", "load_eval_set", "plot_curves"]
