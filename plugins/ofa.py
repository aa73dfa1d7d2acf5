"""Built-in plugin: the OFA-style supernet search spaces ``ofa_resnet`` and ``ofa_mobilenetv3``.

Registered through the search-space hook exactly as a third-party space would be;
the supernets themselves are plain torch code in :mod:`mednns.search_spaces`, imported
when first built (``mednns.lazy``) so listing components stays fast.
"""

import mednns


@mednns.hookimpl
def register_search_spaces(register):
    register("ofa_resnet", mednns.lazy("mednns.search_spaces.ofa_resnet:OFAResNet"),
             description="OFA bottleneck ResNet: elastic depth, expand ratio and width (presets cpu, paper)")
    register("ofa_mobilenetv3", mednns.lazy("mednns.search_spaces.ofa_mobilenetv3:OFAMobileNetV3"),
             description="OFA MobileNetV3 with SE/h-swish: elastic kernel, depth and expand ratio (presets cpu, paper)")
