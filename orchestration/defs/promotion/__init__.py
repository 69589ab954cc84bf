import dagster as dg

from orchestration.defs.promotion import assets

defs = dg.Definitions(assets=[assets.promotion_gate, assets.production_model])
