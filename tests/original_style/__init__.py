"""An orchestrator written the way the original one was, for the drop-in test.

Its layout follows the original's (a ``protocol`` package the rest imports,
``filters``, ``serialization``, ``batch_processor``, ``network``) and so do its
calls: ``recv_msg`` in a loop, ``isinstance`` on the message classes, rows read
by attribute, filtered rows serialized field by field, ``DataBatch.make_embedded``,
an attribute of its own set on each DataBatch, ``BatchRecvSuccess().write_to``.
Only ``protocol.py`` names fastframe: that is the one change a user makes.
Written here for the test; none of it is the original's code.
"""
