"""One module per family with a public official implementation; importing registers them."""

from nas_asc.fidelity.checks import bcres2net, cnn, cpmobile, tfsepnet  # noqa: F401
