"""Helpers of the Spark tests: their marks, the skip when Spark cannot start here, and the test session's conf."""

from __future__ import annotations

import pytest

from features.build.spark import spark_unavailable_reason

SPARK_MARKS = [
    pytest.mark.integration,
    # PySpark 4.0's Arrow conversion passes copy= to pandas 3's astype (harmless deprecation)
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Series.values returning an ndarray:DeprecationWarning"),
]
SPARK_TEST_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.memory": "1g",
    # tiny jobs: the JVM's quick JIT tier only (about halves warm-up; large jobs want the default)
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


def skip_without_spark() -> None:
    """Skip the calling test module when PySpark or Java 17+ is missing (says which)."""
    reason = spark_unavailable_reason()
    if reason:
        pytest.skip(f"Spark tests need PySpark and Java 17+: {reason}", allow_module_level=True)
