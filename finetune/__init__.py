"""PathAsst finetune package."""
