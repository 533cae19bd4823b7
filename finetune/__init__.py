"""PathAsst training: data builders, PathCLIP contrastive training, the two-stage PathAsst (LLaVA-style) training,
the embedded planner's LoRA, and export for serving. Inference code never imports this package (the shipped planner
adapter is a data file under ``adapters/``). Nothing heavy is imported here."""

__all__: list[str] = []
