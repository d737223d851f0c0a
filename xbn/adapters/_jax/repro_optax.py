"""The optax optimizer of xbn's JAX adapters, as source for the ``xbn repro`` templates (Flax,
Haiku, Equinox): every hyper-parameter explicit (Adam with epsilon outside the root, RMSprop from
0 without bias correction), so a standalone script builds the optimizer the adapter built
(``xbn.adapters._jax.common`` ``make_optax``). One text here, included by each family's template,
keeps the three scripts from drifting apart."""

OPTAX_SOURCE = '''
def _optax(opt):
    if opt["name"] == "sgd":
        return optax.sgd(learning_rate=opt["lr"], momentum=None, nesterov=False)
    if opt["name"] == "adam":
        return optax.adam(learning_rate=opt["lr"], b1=opt["beta1"], b2=opt["beta2"],
                          eps=opt["eps"], eps_root=0.0)
    return optax.rmsprop(learning_rate=opt["lr"], decay=opt["rho"], eps=opt["eps"],
                         initial_scale=0.0, eps_in_sqrt=True, centered=False, momentum=None,
                         nesterov=False, bias_correction=False)
'''
