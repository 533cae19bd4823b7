"""PathAsst (LLaVA-style) model and training: PathCLIP vision tower -> projector -> Llama-family language model.

Builders are separate (``model.build_projector``, ``model.load_vision_tower``, ``model.load_language_model``) so that
swapping the language model is one argument; the conversation template is passed as an argument
(``conversation.Template``), never a module global."""

__all__: list[str] = []
