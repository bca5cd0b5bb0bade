"""Adapters to other agent frameworks, each behind an optional extra.

- :mod:`rxagent.adapters.langchain` (``pip install 'rxagent[langchain]'``):
  rxagent tools as LangChain tools, and state stores as a LangChain tool and
  retriever.

Nothing is imported here, so ``import rxagent.adapters`` works without any extra.
"""

__all__: list[str] = []
