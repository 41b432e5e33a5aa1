import sys

from ledger_service.main import SPEC
from services.runtime import main

sys.exit(main(SPEC))
