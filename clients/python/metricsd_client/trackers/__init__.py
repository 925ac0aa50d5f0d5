"""Drop-in replacements for FakeAI's in-process trackers, backed by metricsd."""

from metricsd_client.trackers.cost import (
    BudgetLimitType,
    BudgetPeriod,
    BudgetStatus,
    CostOptimizationSuggestion,
    CostTracker,
)
from metricsd_client.trackers.errors import ErrorMetricsTracker, ErrorPattern, SLOStatus
from metricsd_client.trackers.streaming import (
    StreamingAggregateMetrics,
    StreamingMetrics,
    StreamingMetricsTracker,
)

__all__ = [
    "BudgetLimitType",
    "BudgetPeriod",
    "BudgetStatus",
    "CostOptimizationSuggestion",
    "CostTracker",
    "ErrorMetricsTracker",
    "ErrorPattern",
    "SLOStatus",
    "StreamingAggregateMetrics",
    "StreamingMetrics",
    "StreamingMetricsTracker",
]
