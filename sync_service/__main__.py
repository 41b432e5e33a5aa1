import sys

from sync_service.main import SPEC
from services.runtime import main

sys.exit(main(SPEC))
