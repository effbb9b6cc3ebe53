"""Stream sources and sinks for stream-mtl: synthetic streams, files, River data sets, Kafka."""
