"""ilgnet: the ILGNet image-aesthetics model (Jin et al., WCSP 2016) as a command-line tool."""

__version__ = "0.1.0"
