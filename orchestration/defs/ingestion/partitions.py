import dagster as dg

batch_partitions = dg.DynamicPartitionsDefinition(name="batches")
