import sys

from services.runtime import main
from sync_service.main import SPEC

sys.exit(main(SPEC))
