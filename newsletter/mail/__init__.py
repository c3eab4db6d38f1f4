"""Mail: ``builders`` make each kind of message, ``smtp`` is the one way out, ``rendering``
turns HTML into the text part. Nothing here knows about subscribers or campaigns.
"""
