"""The app's one list of modules, in order: the kernel reads it by name, like Django's INSTALLED_APPS."""

INSTALLED_MODULES: tuple[str, ...] = ("hie.patients", "hie.empi", "hie.exchange", "hie.referral", "hie.family_doctor",
                                     "hie.consult")
