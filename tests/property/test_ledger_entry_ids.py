from uuid import UUID, uuid5

from hypothesis import given
from hypothesis import strategies as st

from ledger_service.domain.postings import usage_entry_id


@given(st.uuids(), st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                           min_size=1, max_size=128))
def test_usage_entry_id_is_exactly_uuid5_of_account_and_event_id(account: UUID, event_id: str) -> None:
    assert usage_entry_id(account, event_id) == str(uuid5(account, event_id))
