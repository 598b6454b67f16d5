"""beam_etl: an Apache Beam ETL framework over Arrow batches, with a dead-letter queue on every step."""

__version__ = "0.1.0"
