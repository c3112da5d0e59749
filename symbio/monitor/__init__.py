"""CUSUM change-point monitors and adaptive batch sizing (PRD §8.2, §8.10)."""

from symbio.monitor.adaptive_batch import AdaptiveBatch
from symbio.monitor.cusum import CusumMonitor
from symbio.monitor.dashboard import CusumDashboard

__all__ = ["AdaptiveBatch", "CusumDashboard", "CusumMonitor"]
