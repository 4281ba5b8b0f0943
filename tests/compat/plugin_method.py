"""A method module as a team would write one, registered through COMPAT_EMBED_METHODS."""

from pipeline.compat import losses
from pipeline.compat.methods import Kind, Method, Role, register

register(Method("plugin_direct", Kind.TRAIN, Role.LCE, losses.lce_direct_terms, needs_statistics=True))
