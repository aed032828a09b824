"""Buy-till-you-die models: the RFM summary of an order history, BG/NBD purchase frequency and P(alive),
Gamma-Gamma order value and the customer lifetime value they give (the ``lifetimes`` conventions, in scipy)."""

from training.btyd.bgnbd import BetaGeoFitter, BTYDError
from training.btyd.gamma_gamma import GammaGammaFitter
from training.btyd.rfm import RFM_COLUMNS, rfm_summary
from training.btyd.simulate import simulate_bgnbd

__all__ = ["RFM_COLUMNS", "BTYDError", "BetaGeoFitter", "GammaGammaFitter", "rfm_summary", "simulate_bgnbd"]
