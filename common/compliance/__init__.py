"""Compliance rules every send and every inbound text must respect.

- ``keywords``     what an inbound text means: opt-out, opt-in, help, or a reply a person should review
- ``quiet_hours``  when a bulk text may go out in the recipient's time zone, and when it is deferred to
"""
