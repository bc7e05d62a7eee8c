"""Tabular anonymization (k-anonymity, l-diversity, t-closeness) in scikit-learn style.

Pure pandas/numpy/scikit-learn: importing it never imports MXNet.
"""
from .anonymizer import KAnonymizer
from .checks import check_k_anonymity, check_l_diversity, check_t_closeness
from .minimizer import DataMinimizer

__all__ = ["KAnonymizer", "DataMinimizer", "check_k_anonymity", "check_l_diversity",
           "check_t_closeness"]
