from tests.integration.ledger_fixtures import ledger

__all__ = ["ledger"]
