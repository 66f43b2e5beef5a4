from tests.e2e.conftest import simulator

__all__ = ["simulator"]
